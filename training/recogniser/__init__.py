"""The image recogniser: what an upload is (see tasks/recognition.py)."""
