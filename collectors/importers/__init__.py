"""Importers turn logs and public traces that users already have into gpuledger traces."""
