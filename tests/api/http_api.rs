//! The REST API: create, takeover, errors, tokens, settings, CORS, admin.
