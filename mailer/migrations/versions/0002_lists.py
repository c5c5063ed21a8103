"""lists: settings, roles, confirmations, archive, digests, bounces

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 14:29:14.166171
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('robot_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('target', sa.String(length=320), nullable=False),
    sa.Column('source', sa.String(length=320), nullable=False),
    sa.Column('sent_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_robot_log'))
    )
    with op.batch_alter_table('robot_log', schema=None) as batch_op:
        batch_op.create_index('ix_robot_log_source', ['source', 'sent_at'], unique=False)
        batch_op.create_index('ix_robot_log_target', ['target', 'sent_at'], unique=False)

    op.create_table('archive',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('archived_at', sa.Float(), nullable=False),
    sa.Column('sender', sa.String(length=320), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], name=op.f('fk_archive_list_id_lists')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_archive'))
    )
    with op.batch_alter_table('archive', schema=None) as batch_op:
        batch_op.create_index('ix_archive_list', ['list_id', 'id'], unique=False)

    op.create_table('bounces',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.Column('message_id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], name=op.f('fk_bounces_list_id_lists')),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_bounces_message_id_messages')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bounces'))
    )
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_bounces_list_id'), ['list_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_bounces_member_id'), ['member_id'], unique=False)

    op.create_table('digest_state',
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('last_archived_id', sa.Integer(), nullable=False),
    sa.Column('last_sent_at', sa.Float(), nullable=False),
    sa.Column('volume', sa.Integer(), nullable=False),
    sa.Column('issue', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], name=op.f('fk_digest_state_list_id_lists')),
    sa.PrimaryKeyConstraint('list_id', name=op.f('pk_digest_state'))
    )
    op.create_table('pending',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=200), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], name=op.f('fk_pending_list_id_lists')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pending')),
    sa.UniqueConstraint('token', name=op.f('uq_pending_token'))
    )
    with op.batch_alter_table('pending', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_pending_list_id'), ['list_id'], unique=False)

    with op.batch_alter_table('held', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('expires_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('decided_at', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('decided_by', sa.String(length=320), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=False, server_default=''))
        batch_op.create_unique_constraint(batch_op.f('uq_held_token'), ['token'])

    with op.batch_alter_table('lists', schema=None) as batch_op:
        batch_op.add_column(sa.Column('language', sa.String(length=8), nullable=False, server_default='en'))
        batch_op.add_column(sa.Column('nonmember_action', sa.String(length=12), nullable=False, server_default='hold'))
        batch_op.add_column(sa.Column('subject_prefix', sa.String(length=64), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('reply_to', sa.String(length=12), nullable=False, server_default='poster'))
        batch_op.add_column(sa.Column('footer', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('dmarc_mode', sa.String(length=16), nullable=False, server_default='dmarc-policy'))
        batch_op.add_column(sa.Column('dmarc_poster_in', sa.String(length=12), nullable=False, server_default='reply-to'))
        batch_op.add_column(sa.Column('hold_days', sa.Integer(), nullable=False, server_default='14'))
        batch_op.add_column(sa.Column('confirm_days', sa.Integer(), nullable=False, server_default='7'))
        batch_op.add_column(sa.Column('bounce_threshold', sa.Float(), nullable=False, server_default='5.0'))
        batch_op.add_column(sa.Column('bounce_decay_days', sa.Integer(), nullable=False, server_default='7'))
        batch_op.add_column(sa.Column('digest_period', sa.String(length=12), nullable=False, server_default='daily'))
        batch_op.add_column(sa.Column('digest_max_kb', sa.Integer(), nullable=False, server_default='30'))

    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=12), nullable=False, server_default='member'))
        batch_op.add_column(sa.Column('enabled', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('disabled_reason', sa.String(length=32), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('bounce_score', sa.Float(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('last_bounce_at', sa.Float(), nullable=True))
        batch_op.drop_constraint(batch_op.f('uq_members_list_id'), type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_members_list_id'), ['list_id', 'address', 'role'])
        batch_op.create_index('ix_members_list_role', ['list_id', 'role'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('members', schema=None) as batch_op:
        batch_op.drop_index('ix_members_list_role')
        batch_op.drop_constraint(batch_op.f('uq_members_list_id'), type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_members_list_id'), ['list_id', 'address'])
        batch_op.drop_column('last_bounce_at')
        batch_op.drop_column('bounce_score')
        batch_op.drop_column('disabled_reason')
        batch_op.drop_column('enabled')
        batch_op.drop_column('role')

    with op.batch_alter_table('lists', schema=None) as batch_op:
        batch_op.drop_column('digest_max_kb')
        batch_op.drop_column('digest_period')
        batch_op.drop_column('bounce_decay_days')
        batch_op.drop_column('bounce_threshold')
        batch_op.drop_column('confirm_days')
        batch_op.drop_column('hold_days')
        batch_op.drop_column('dmarc_poster_in')
        batch_op.drop_column('dmarc_mode')
        batch_op.drop_column('footer')
        batch_op.drop_column('reply_to')
        batch_op.drop_column('subject_prefix')
        batch_op.drop_column('nonmember_action')
        batch_op.drop_column('language')

    with op.batch_alter_table('held', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_held_token'), type_='unique')
        batch_op.drop_column('note')
        batch_op.drop_column('decided_by')
        batch_op.drop_column('decided_at')
        batch_op.drop_column('expires_at')
        batch_op.drop_column('token')

    with op.batch_alter_table('pending', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_pending_list_id'))

    op.drop_table('pending')
    op.drop_table('digest_state')
    with op.batch_alter_table('bounces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounces_member_id'))
        batch_op.drop_index(batch_op.f('ix_bounces_list_id'))

    op.drop_table('bounces')
    with op.batch_alter_table('archive', schema=None) as batch_op:
        batch_op.drop_index('ix_archive_list')

    op.drop_table('archive')
    with op.batch_alter_table('robot_log', schema=None) as batch_op:
        batch_op.drop_index('ix_robot_log_target')
        batch_op.drop_index('ix_robot_log_source')

    op.drop_table('robot_log')
