"""The demo's wing: the KPS/IAM simulator, the Slack stand-in, the playground and the demo.

The bot's own modules never import this package; only `python -m bot demo` loads it, lazily.
"""
