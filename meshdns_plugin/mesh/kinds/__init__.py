"""One reader per kind of document, shared by every source."""
