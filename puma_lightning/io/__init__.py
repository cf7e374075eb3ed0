"""Files: prompt banks and atomic writes."""
