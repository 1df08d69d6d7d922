"""qnet-recovery: acts on QNet's alerts (restart, resync) within budgets and guards, and
records every decision. See ``engine`` for the rules and ``service`` for the service."""
