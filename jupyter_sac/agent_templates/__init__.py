"""The agent template presets SAC ships (``<name>.json``, each a TemplateDefinition
of service/openapi.yaml), loaded as organisation templates when the service
starts (service/operations/templates.py: upsert_presets; docs/templates.md)."""
