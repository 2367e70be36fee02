"""The inbox of provider events, processed exactly once into payments and grants."""
