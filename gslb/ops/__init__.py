"""The operator's surface: status page and API, metrics, logs, explanations."""
