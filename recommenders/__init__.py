"""Pure analysis over ledger history: right-sizing, commitments and the weekly report."""
