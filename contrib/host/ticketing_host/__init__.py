"""The reference host service: the seed's REST API over ticketing_core."""
