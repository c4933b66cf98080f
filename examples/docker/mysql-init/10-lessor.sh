# Sourced by the mysql image's entrypoint on the first start (an empty data
# volume), after the root user exists: lessor's admin user and a sample
# database. The admin password comes from the compose secret mysql_admin_pw.
# lessor_admin may create, lock and drop users, see and kill their
# connections, read the account tables (hosts of a user; tidy's listing),
# and pass on what it holds WITH GRANT OPTION.

lessor_admin_pw=$(cat /run/secrets/mysql_admin_pw)
docker_process_sql --database=mysql <<-EOSQL
	CREATE DATABASE shop;
	CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(64));
	INSERT INTO shop.items VALUES (1, 'lessor');
	CREATE USER 'lessor_admin'@'%' IDENTIFIED BY '${lessor_admin_pw}';
	GRANT CREATE USER, PROCESS, CONNECTION_ADMIN ON *.* TO 'lessor_admin'@'%';
	GRANT SELECT ON mysql.* TO 'lessor_admin'@'%';
	GRANT SELECT, INSERT, UPDATE ON shop.* TO 'lessor_admin'@'%' WITH GRANT OPTION;
EOSQL
unset lessor_admin_pw
