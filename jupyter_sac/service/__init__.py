"""The hub-managed `sac` service: REST API over the store and the credential proxy."""
