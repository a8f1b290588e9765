"""Prices per GPU-second: rate cards, the bundled snapshot, and the AWS, GCP and Azure pricing APIs."""
