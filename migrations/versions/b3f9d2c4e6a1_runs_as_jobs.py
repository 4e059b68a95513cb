"""runs as jobs: queued and running states, the stage reached, attempts and the holder's heartbeat

Revision ID: b3f9d2c4e6a1
Revises: e5d1c0f3a7b2
Create Date: 2026-12-02 19:30:00

A run used to be `pending` while the request that made it ran the models; one still pending at upgrade
time lost its request when the old server stopped, so it is marked failed with that reason.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b3f9d2c4e6a1'
down_revision = 'e5d1c0f3a7b2'
branch_labels = None
depends_on = None

INTERRUPTED = ("the analysis was interrupted: the server stopped before it finished. Nothing was kept.")


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_ids', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('stages', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('stage', sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('started_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_runs_heartbeat_at'), ['heartbeat_at'], unique=False)
    runs = sa.table('runs', sa.column('status', sa.String), sa.column('error', sa.Text),
                    sa.column('finished_at', sa.DateTime))
    op.execute(runs.update().where(runs.c.status == 'pending')
               .values(status='failed', error=INTERRUPTED, finished_at=sa.func.current_timestamp()))


def downgrade():
    runs = sa.table('runs', sa.column('status', sa.String))
    op.execute(runs.update().where(runs.c.status.in_(('queued', 'running'))).values(status='pending'))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_heartbeat_at'))
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('started_at')
        batch_op.drop_column('attempts')
        batch_op.drop_column('stage')
        batch_op.drop_column('stages')
        batch_op.drop_column('model_ids')
