"""Federated training across partner sites with Flower (ClientApp/ServerApp, PFM strategy)."""
