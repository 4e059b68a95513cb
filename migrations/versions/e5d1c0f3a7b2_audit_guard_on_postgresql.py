"""the append-only audit trail on PostgreSQL too

The SQLite triggers came with 1648067359d4; on PostgreSQL the same guard is a trigger function that
refuses UPDATE, DELETE and TRUNCATE of audit_events (database.AUDIT_TRIGGERS_POSTGRESQL, the statements
db.create_all() runs). Nothing to do on SQLite.

Revision ID: e5d1c0f3a7b2
Revises: 7c1e5a2b9d40
Create Date: 2026-12-02 16:40:00

"""
from alembic import op

AUDIT_TRIGGERS_POSTGRESQL = (
    "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$",
    "CREATE OR REPLACE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE OR REPLACE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
)


# revision identifiers, used by Alembic.
revision = 'e5d1c0f3a7b2'
down_revision = '7c1e5a2b9d40'
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name == "postgresql":
        for sql in AUDIT_TRIGGERS_POSTGRESQL:
            op.execute(sql)


def downgrade():
    if op.get_bind().dialect.name == "postgresql":
        for trigger in ("audit_events_no_update", "audit_events_no_delete", "audit_events_no_truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
