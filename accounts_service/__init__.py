"""Users, identities and linked MT5 accounts with their balance, equity and drawdown."""
