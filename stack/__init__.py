"""The docker-compose stack (docker-compose.yaml) run as local processes, for machines without Docker.

`stack.native` starts and stops the services; `python -m stack` (bin/stack, `make stack`) is its CLI;
tests/stack/test_native_stack.py drives the same code. No import of `ml` here: this package only wires
processes, the pipeline code runs inside Airflow's task processes.
"""
