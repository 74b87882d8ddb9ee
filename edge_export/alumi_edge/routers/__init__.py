"""HTTP routers, one per concern; ``main.create_app`` includes them (add a router there to add an API)."""
