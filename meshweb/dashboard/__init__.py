"""The admin dashboard: server-rendered pages, live updates over a browser WebSocket (/ws/dashboard/)."""
