"""The leaf layer every part may import: configuration, id grammar and wire records.
It imports only the standard library, msgpack and `taskmesh.exceptions`."""
