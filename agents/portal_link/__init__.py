"""Link from a node agent to the portal: applies pushed configuration, reports heartbeats, telemetry and jobs."""
