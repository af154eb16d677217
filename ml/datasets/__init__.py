"""Seeded synthetic datasets for the demo use cases (no Airflow import)."""
