require_relative '../../spec_helper'

describe 'backup_agent::fleet_view' do
  include_context 'with backup_agent data bag'

  plugin_dir = '/etc/chef/ohai/plugins'

  let(:chef_run) do
    ChefSpec::SoloRunner.new do |node|
      node.chef_environment = 'staging'
    end.converge('backup_agent::default')
  end

  it 'is part of the default recipe' do
    expect(chef_run).to include_recipe('backup_agent::fleet_view')
  end

  it 'installs the Ohai plugin into a directory of Ohai\'s plugin_path' do
    expect(chef_run).to create_directory(plugin_dir).with(recursive: true)
    expect(chef_run).to create_cookbook_file("#{plugin_dir}/backup_agent.rb")
      .with(source: 'ohai/backup_agent.rb', mode: '0644')
  end

  it 'tells the plugin where the agent and its config are, and the tolerance' do
    expect(chef_run).to(render_file("#{plugin_dir}/backup_agent.json").with_content do |content|
      expect(JSON.parse(content)).to eq('bin' => '/opt/backup-agent/bin/backup-agent',
                                        'config' => BackupAgentSpec::CONFIG_PATH,
                                        'stale_after_periods' => 2)
    end)
  end

  it 'reloads the plugin at the end of a run that changed it, and only then' do
    ohai = chef_run.ohai('backup_agent')
    expect(ohai).to do_nothing
    expect(ohai.plugin).to eq('backup_agent')
    expect(chef_run.cookbook_file("#{plugin_dir}/backup_agent.rb")).to notify('ohai[backup_agent]').to(:reload).delayed
    expect(chef_run.file("#{plugin_dir}/backup_agent.json")).to notify('ohai[backup_agent]').to(:reload).delayed
  end
end
