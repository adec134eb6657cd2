"""The actor processes: ToolActor and ChatActor, each owning one inference engine."""
