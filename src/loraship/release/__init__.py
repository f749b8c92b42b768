"""Release stage: promote and roll back aliases behind a passed gate, with an audit log."""
