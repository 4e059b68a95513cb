"""gunicorn settings for every set-up (`make run`, the Docker image): `gunicorn -c gunicorn.conf.py wsgi:app`.

Threaded workers (gthread): a request waiting for its client (a slow upload, a kept-alive connection) holds
one of THREADS threads, not a whole worker, and a connection that sends nothing is parked by gunicorn's
poller. The body itself is read by web/slow_clients.py at a minimum rate, so a slowly dribbled body frees
its thread after the grace period (10 s); behind nginx (docker-compose.yml) bodies arrive buffered and
one address holds at most 20 connections. The worker time-out
(JOINTSCAN_WORKER_TIMEOUT_S) restarts a worker whose main loop hangs. Analyses do not run in a request:
an upload queues its run and returns (jobs.py), the job runs in a Celery worker or in this process's small
job pool, under JOB_TIME_LIMIT_S, and a run whose process died is handed to a live one by the sweep
(web/upkeep.py).
"""
import os

bind = f"{os.environ.get('HOST', '127.0.0.1')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WORKERS", "2"))
worker_class = "gthread"
# More threads than slow clients are likely: a connection lands on whichever worker accepts it first, so
# one worker's threads must outnumber them. Without REDIS_URL, analyses run in JOB_THREADS threads of their
# own per process (jobs.InProcessExecutor); these threads serve pages, images, uploads and /healthz.
threads = int(os.environ.get("THREADS", "32"))
worker_connections = threads + 16
timeout = int(os.environ.get("JOINTSCAN_WORKER_TIMEOUT_S", "120"))
graceful_timeout = 30
keepalive = 5
# Header limits (gunicorn's defaults, stated): a request line or header over them is refused with 400.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
# X-Forwarded-* are never gunicorn's to trust: the app trusts exactly JOINTSCAN_PROXY_FIX_HOPS proxies
# itself (web/security.py), so gunicorn must not turn a client's X-Forwarded-Proto into https.
forwarded_allow_ips = ""
accesslog = "-"
