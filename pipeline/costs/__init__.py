"""The estimate and report stages: prices as dated data, the cost of messages before sending (the
estimate and the budget's figures) and after (from receipts), ChatApp points, the report files
(CSV, Parquet, HTML with charts) and the run summary.

Reads what dispatch and receipts wrote to the store; hands reports/<campaign>/ and plain data for
Prefect artifacts to the flows.
"""
