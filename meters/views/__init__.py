"""Views of the meters app, one module per entity: meters, customers and events."""
