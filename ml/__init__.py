"""ml: the continuous-training library (no Airflow import anywhere in this package).

Each lifecycle stage is a module with one public entry function and a typed result:
config -> data/contract -> drift -> performance -> decision -> training -> gates -> export
-> registry -> deploy -> record. `python -m ml <step>` exposes every step on the command line.
"""
