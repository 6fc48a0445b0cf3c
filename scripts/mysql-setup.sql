-- Creates the app's databases and its own user. Run it once as an administrator:
--   sudo mariadb < scripts/mysql-setup.sql      (or: mysql -u root -p < scripts/mysql-setup.sql)
-- utf8mb4 stores every Unicode character, emoji included (MySQL's old "utf8" stops at 3 bytes).
-- The user may use `tutorial` and every database named tutorial_...: tutorial_test (pytest
-- empties it), tutorial_bench (the benchmarks empty it), and any fresh one you create.
CREATE DATABASE IF NOT EXISTS tutorial CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS tutorial_test CHARACTER SET utf8mb4;
CREATE DATABASE IF NOT EXISTS tutorial_bench CHARACTER SET utf8mb4;
CREATE USER IF NOT EXISTS 'tutorial'@'localhost' IDENTIFIED BY 'tutorial-pass';
CREATE USER IF NOT EXISTS 'tutorial'@'%' IDENTIFIED BY 'tutorial-pass';
GRANT ALL PRIVILEGES ON tutorial.* TO 'tutorial'@'localhost', 'tutorial'@'%';
GRANT ALL PRIVILEGES ON `tutorial\_%`.* TO 'tutorial'@'localhost', 'tutorial'@'%';
