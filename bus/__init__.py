"""The contract between the edge and the actors: subjects and events on NATS."""
