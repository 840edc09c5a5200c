"""What an operator does to a running pipeline: replay DLQ entries and exceptions, reconcile
with the ERP, check the ERP's setup (the commands are in `streams.cli`)."""
