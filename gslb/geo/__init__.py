"""The geo database: places and addresses, the MMDB reader, the compiled table of every block."""
