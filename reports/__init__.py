"""Reports of a run for people and for other systems: the PDF report (reports.pdf). Built from plain data
(reports.pdf.Report), so that nothing here reads the database or knows Flask: web/report.py gathers a run's
facts and asks for the document."""
