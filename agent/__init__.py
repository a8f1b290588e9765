"""The node agent and the ledger: attribution, classification, rollups and the CLI."""
