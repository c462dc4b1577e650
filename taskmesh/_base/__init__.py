"""The leaf layer every part may import: configuration, the id and queue-name grammars and
the wire records. It imports only the standard library, msgpack and `taskmesh.exceptions`."""
