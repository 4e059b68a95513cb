"""storage quota per user, stored bytes per run

Revision ID: 7c1e5a2b9d40
Revises: a76616e8fef8
Create Date: 2026-12-02 16:10:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c1e5a2b9d40'
down_revision = 'a76616e8fef8'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('storage_quota_bytes', sa.BigInteger(), nullable=True))
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stored_bytes', sa.BigInteger(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('stored_bytes')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('storage_quota_bytes')
