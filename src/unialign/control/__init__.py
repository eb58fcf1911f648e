"""Control engine: environments, SAC, replay buffer, segments, reward learning, the loop."""
