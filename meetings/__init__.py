"""Meetings of the network's bodies and their iMIP invitations."""
