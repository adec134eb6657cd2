"""The WebSocket edge: speaks the Yap protocol to clients and events to the bus."""
