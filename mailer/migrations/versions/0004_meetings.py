"""meetings

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 14:50:03.940401
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('parties',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('region', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_parties')),
    sa.UniqueConstraint('name', name=op.f('uq_parties_name'))
    )
    op.create_table('bodies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=12), nullable=False),
    sa.Column('list_id', sa.Integer(), nullable=True),
    sa.Column('max_parties', sa.Integer(), nullable=True),
    sa.Column('one_delegate_per_party', sa.Boolean(), nullable=False),
    sa.Column('meetings_per_year', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['list_id'], ['lists.id'], name=op.f('fk_bodies_list_id_lists')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_bodies')),
    sa.UniqueConstraint('slug', name=op.f('uq_bodies_slug'))
    )
    op.create_table('coordination_terms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('party_id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('contact', sa.String(length=320), nullable=False),
    sa.ForeignKeyConstraint(['party_id'], ['parties.id'], name=op.f('fk_coordination_terms_party_id_parties')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_coordination_terms'))
    )
    op.create_table('delegates',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('party_id', sa.Integer(), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['party_id'], ['parties.id'], name=op.f('fk_delegates_party_id_parties')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delegates')),
    sa.UniqueConstraint('address', name=op.f('uq_delegates_address'))
    )
    with op.batch_alter_table('delegates', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_delegates_party_id'), ['party_id'], unique=False)

    op.create_table('meetings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uid', sa.String(length=200), nullable=False),
    sa.Column('body_id', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('location', sa.String(length=300), nullable=False),
    sa.Column('tz', sa.String(length=64), nullable=False),
    sa.Column('start_local', sa.String(length=19), nullable=False),
    sa.Column('end_local', sa.String(length=19), nullable=False),
    sa.Column('starts_at', sa.Float(), nullable=False),
    sa.Column('ends_at', sa.Float(), nullable=False),
    sa.Column('host_party_id', sa.Integer(), nullable=True),
    sa.Column('alongside', sa.String(length=300), nullable=False),
    sa.Column('agenda_url', sa.String(length=1000), nullable=False),
    sa.Column('send_at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['body_id'], ['bodies.id'], name=op.f('fk_meetings_body_id_bodies')),
    sa.ForeignKeyConstraint(['host_party_id'], ['parties.id'], name=op.f('fk_meetings_host_party_id_parties')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_meetings')),
    sa.UniqueConstraint('uid', name=op.f('uq_meetings_uid'))
    )
    with op.batch_alter_table('meetings', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_meetings_body_id'), ['body_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_meetings_starts_at'), ['starts_at'], unique=False)

    op.create_table('seats',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('body_id', sa.Integer(), nullable=False),
    sa.Column('delegate_id', sa.Integer(), nullable=False),
    sa.Column('party_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.String(length=12), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['body_id'], ['bodies.id'], name=op.f('fk_seats_body_id_bodies')),
    sa.ForeignKeyConstraint(['delegate_id'], ['delegates.id'], name=op.f('fk_seats_delegate_id_delegates')),
    sa.ForeignKeyConstraint(['party_id'], ['parties.id'], name=op.f('fk_seats_party_id_parties')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_seats')),
    sa.UniqueConstraint('body_id', 'delegate_id', name=op.f('uq_seats_body_id'))
    )
    with op.batch_alter_table('seats', schema=None) as batch_op:
        batch_op.create_index('ix_seats_body_party', ['body_id', 'party_id'], unique=False)

    op.create_table('invitations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('meeting_id', sa.Integer(), nullable=False),
    sa.Column('delegate_id', sa.Integer(), nullable=True),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('language', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('partstat', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.Text(), nullable=False),
    sa.Column('replied_at', sa.Float(), nullable=True),
    sa.Column('reply_sequence', sa.Integer(), nullable=True),
    sa.Column('reply_stamp', sa.Float(), nullable=True),
    sa.Column('reset_sequence', sa.Integer(), nullable=False),
    sa.Column('sent_sequence', sa.Integer(), nullable=True),
    sa.Column('delegated_from_id', sa.Integer(), nullable=True),
    sa.Column('delegated_to', sa.String(length=320), nullable=False),
    sa.Column('reminded', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['delegate_id'], ['delegates.id'], name=op.f('fk_invitations_delegate_id_delegates')),
    sa.ForeignKeyConstraint(['meeting_id'], ['meetings.id'], name=op.f('fk_invitations_meeting_id_meetings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invitations')),
    sa.UniqueConstraint('meeting_id', 'address', name=op.f('uq_invitations_meeting_id'))
    )
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_invitations_meeting_id'), ['meeting_id'], unique=False)

    op.create_table('rsvp_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('meeting_id', sa.Integer(), nullable=False),
    sa.Column('invitation_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('partstat', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('reported', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['invitation_id'], ['invitations.id'], name=op.f('fk_rsvp_events_invitation_id_invitations')),
    sa.ForeignKeyConstraint(['meeting_id'], ['meetings.id'], name=op.f('fk_rsvp_events_meeting_id_meetings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rsvp_events'))
    )
    with op.batch_alter_table('rsvp_events', schema=None) as batch_op:
        batch_op.create_index('ix_rsvp_events_reported', ['reported', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('rsvp_events', schema=None) as batch_op:
        batch_op.drop_index('ix_rsvp_events_reported')

    op.drop_table('rsvp_events')
    with op.batch_alter_table('invitations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_invitations_meeting_id'))

    op.drop_table('invitations')
    with op.batch_alter_table('seats', schema=None) as batch_op:
        batch_op.drop_index('ix_seats_body_party')

    op.drop_table('seats')
    with op.batch_alter_table('meetings', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_meetings_starts_at'))
        batch_op.drop_index(batch_op.f('ix_meetings_body_id'))

    op.drop_table('meetings')
    with op.batch_alter_table('delegates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delegates_party_id'))

    op.drop_table('delegates')
    op.drop_table('coordination_terms')
    op.drop_table('bodies')
    op.drop_table('parties')
