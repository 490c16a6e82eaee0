"""A local Slack playground in the browser for the demo: the page, its routes and its state."""

from bot.sandbox.playground.routes import Playground, PlaygroundConfig

__all__ = ["Playground", "PlaygroundConfig"]
