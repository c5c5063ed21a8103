"""Distribution lists: members, posting rules and the list-mail pipeline."""
