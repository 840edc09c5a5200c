"""Salesforce Pub/Sub API: the vendored proto's stubs, Avro CDC decoding, the subscriber's parts."""
