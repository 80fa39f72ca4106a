"""CLI subcommands, one module each (see pyquant/cli.py for the contract)."""
