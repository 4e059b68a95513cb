"""Operations that admins run from the command line: backup and restore."""
