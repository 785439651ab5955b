"""The catalog: facts about models and hardware, no logic (DESIGN §2)."""
