"""The HTML planner: server-rendered pages over the same planner as the JSON API."""
