"""ct_airflow: Airflow operators for the continuous-training pipeline (thin wrappers over ml/).

Each operator parses its templated arguments, calls one function of `ml.pipeline`, and returns a
small JSON summary (XCom). Import the operators from `ct_airflow.operators`.
"""
