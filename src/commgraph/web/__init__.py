"""The owner's side: REST API, dashboard, and the credentials both rely on."""
