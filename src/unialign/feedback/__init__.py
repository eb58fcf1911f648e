"""Where preferences come from: simulated teachers, datasets, humans — and the SQLite store."""
