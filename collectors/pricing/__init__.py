"""Prices per GPU-second: rate cards, the bundled snapshot and (later) cloud APIs."""
